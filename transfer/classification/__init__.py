"""Classification transfer of a frozen backbone to new image distributions (Ericsson et al.,
CVPR 2021, "How Well Do Self-Supervised Models Transfer?"): many-shot linear (L-BFGS logistic
regression, C chosen on validation), weighted kNN, and N-way K-shot episodes with a prototype
classifier, on image folders, offline domains built from shipped data, and Meta-Dataset's
domains laid out as folders. Runs as sweep tasks beside the Detectron2 ones
(docs/classification.md).
"""
