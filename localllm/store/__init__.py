"""The content-addressed store: names to manifests, digests to blobs, and pulls from the Hub that fill
them (hashed before anything is committed). It knows nothing of models' meaning above their files."""
