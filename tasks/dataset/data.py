"""Reading the user's rows with Hugging Face `datasets`: a .jsonl / .json / .csv / .parquet file, a folder written by
``save_to_disk`` (a Dataset or a DatasetDict), or a hub dataset name (on a machine that reaches the hub)."""
from __future__ import annotations

from pathlib import Path

from tasks.store import AssetError

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_rows(path: str, split: str, *, field: str = "task.data.path"):
    """A ``datasets.Dataset`` of ``path``'s rows (``split`` for folders of several splits and hub datasets); AssetError naming
    ``field`` and what is accepted when it cannot be read."""
    import datasets

    datasets.disable_progress_bars()
    p = Path(path)
    try:
        if p.is_file():
            builder = FILE_BUILDERS.get(p.suffix.lower())
            if builder is None:
                raise AssetError(f"{field}: {path!r} has suffix {p.suffix!r}; accepted files: {', '.join(FILE_BUILDERS)} "
                                 "(or a datasets folder written by save_to_disk, or a hub dataset name)")
            ds = datasets.load_dataset(builder, data_files=str(p), split="train")
        elif p.is_dir():
            if not ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists()):
                raise AssetError(f"{field}: the folder {path!r} is not a datasets folder (no dataset_info.json / dataset_dict.json: "
                                 "write one with Dataset.save_to_disk, or point at a .jsonl / .csv / .parquet file)")
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise AssetError(f"{field}: the folder {path!r} has splits {sorted(ds)}, not {split!r}; set the split to one of them")
                ds = ds[split]
        elif p.suffix.lower() in FILE_BUILDERS or path.startswith((".", "/", "~")):
            raise AssetError(f"{field}: no file or folder at {path!r}")
        else:
            ds = datasets.load_dataset(path, split=split)
    except AssetError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds (DatasetGenerationError, FileNotFoundError, ValueError)
        raise AssetError(f"{field}: cannot read {path!r} as a dataset: {type(e).__name__}: {str(e)[:300]}") from None
    if len(ds) == 0:
        raise AssetError(f"{field}: {path!r} has no rows")
    return ds


def require_columns(ds, keys: list[str], *, source: str, field: str) -> None:
    missing = [k for k in keys if k not in ds.column_names]
    if missing:
        raise AssetError(f"{field}: {source} has no column {missing[0]!r}; its columns are {ds.column_names}")
