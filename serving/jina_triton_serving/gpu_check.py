def add_arguments(parser):  # TEMPORARY: replaced by the GPU check
    pass


def run(args):
    raise NotImplementedError
