def add_arguments(parser):  # TEMPORARY: replaced by the gateway
    pass


def run(args):
    raise NotImplementedError
