"""The evolution engine: genomes as integer vectors, operators, NSGA-II survival, ask/tell.

Never imports ONNX Runtime, paramiko or anything of a device.
"""
