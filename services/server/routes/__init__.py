"""The API's routes, one module per resource, each an APIRouter that services/server/api.create_app includes."""
