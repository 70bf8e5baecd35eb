"""What the daemon does that needs several packages at once: create a model from a Modelfile (parse, check,
write blobs and a manifest) and describe a stored model for ``/api/show``. No HTTP here: the API faces
in ``localllm.server`` call these and translate.
"""
