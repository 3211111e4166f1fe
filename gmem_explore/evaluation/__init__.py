"""How good are generated images, and sampling enough of them to tell:

- compare.py       generated vs real images in a snippet encoder's feature space (`gmem evaluate`)
- metrics.py       FD, precision / recall, k-NN accuracy, nearest neighbours on feature matrices
- fid_sampling.py  50,000 images for FID, sharded by seed over processes, resumable (`gmem sample-fid`)
"""
