def fuse(model, inplace=False):
    raise NotImplementedError
