"""Checkpoints: from a name or a path to a loaded model, bank, encoder and sampler recipe.

- hub.py                names ("emoji-32", "gmem-v1-xl") -> local files; Hub downloads, revisions, offline use
- folder.py             our own format: a folder of safetensors files + config.json (Checkpoint, load/save)
- official.py           the released GMem v1 .pth: read safely, check strictly, convert to a folder
- official_layouts.py   what a foreign .pth holds, in words
- conversion_cache.py   a released .pth is converted once and the folder reused
A new upstream format is a converter module beside official.py. Nothing is imported here: hub.py is read by the
CLI before torch is imported.
"""
