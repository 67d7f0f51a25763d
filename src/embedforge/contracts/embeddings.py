"""The base model's chunk embeddings in a mine artifact: ``embeddings.npy`` + ``embedding_ids.json``.

The mine stage embeds every chunk once with the base model and saves the matrix (float32, one L2-normalised row per
chunk) and the chunk id of each row; evaluate reads them back instead of encoding the corpus with the base model
again. :func:`read_embeddings` is the one reader of that pair of files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from embedforge.contracts.files import EMBEDDING_IDS_FILE, EMBEDDINGS_FILE, read_json
from embedforge.errors import InputError

if TYPE_CHECKING:
    import numpy as np


def read_embeddings(folder: str | Path, chunk_ids: Sequence[str] | None = None, dim: int | None = None
                    ) -> tuple[np.ndarray, list[str]]:
    """Read the chunk embeddings the mine stage saved in ``folder``.

    Args:
        folder: A mine artifact folder.
        chunk_ids: When given, the rows of exactly these chunks, in this order (rows of other chunks are left out).
        dim: When given, the embedding dimension the rows must have (that of the model that will search them).

    Returns:
        (float32 C-contiguous matrix (rows, dim), the chunk id of each row).

    Raises:
        InputError: a file is missing or unreadable; the ids are not unique strings, one per row; the rows are not
            ``dim`` wide or not L2-normalised; or a chunk of ``chunk_ids`` has no row.
    """
    import numpy as np

    d = Path(folder)
    emb_path = d / EMBEDDINGS_FILE
    if not emb_path.is_file():
        raise InputError(f"{emb_path} does not exist; run the mine stage first")
    ids = read_json(d / EMBEDDING_IDS_FILE)
    try:
        emb = np.load(emb_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {emb_path}: {exc}") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(set(ids)) != len(ids):
        raise InputError(f"{d / EMBEDDING_IDS_FILE} must be a list of unique chunk ids")
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise InputError(f"{emb_path} has shape {emb.shape} but {EMBEDDING_IDS_FILE} lists {len(ids)} ids")
    if dim is not None and emb.shape[1] != dim:
        raise InputError(f"{emb_path} holds {emb.shape[1]}-dimensional rows, not {dim}")
    if chunk_ids is not None:
        row = {cid: i for i, cid in enumerate(ids)}
        missing = [cid for cid in chunk_ids if cid not in row]
        if missing:
            raise InputError(f"{d / EMBEDDING_IDS_FILE} lacks {len(missing)} of {len(chunk_ids)} chunks "
                             f"(e.g. {missing[:3]})")
        emb, ids = emb[[row[cid] for cid in chunk_ids]], list(chunk_ids)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if not np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3):
        raise InputError(f"{emb_path}: the rows are not L2-normalised")
    return emb, ids
