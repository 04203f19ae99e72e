"""The REST API's bodies, one module per resource; services/server/api_models.py gathers them under one name."""
