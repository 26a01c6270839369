"""Fetches an artifact from the registry with the real Python Hub client.

Run with HF_ENDPOINT pointing at the registry. Prints one JSON object: the sha256 and
size of what hf_hub_download fetched, the sha256 of a ranged read (bytes START-END)
made through huggingface_hub's HTTP session, and the metadata the client read.
"""

import hashlib
import json
import sys

import huggingface_hub
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.utils import get_session

repo, filename, cache, start, end = sys.argv[1:6]
path = hf_hub_download(repo_id=repo, filename=filename, cache_dir=cache)
with open(path, "rb") as f:
    data = f.read()
url = hf_hub_url(repo, filename)
meta = get_hf_file_metadata(url)
r = get_session().get(url, headers={"Range": f"bytes={start}-{end}"})
print(
    json.dumps(
        {
            "version": huggingface_hub.__version__,
            "url": url,
            "path": path,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "range_status": r.status_code,
            "range_sha256": hashlib.sha256(r.content).hexdigest(),
            "commit": meta.commit_hash,
            "etag": meta.etag,
            "meta_size": meta.size,
        }
    )
)
