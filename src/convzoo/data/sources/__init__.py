"""Sources: readers that turn one kind of stored data into an in-memory `Dataset`.

``cifar`` (the official python archives), ``digits`` (scikit-learn's), ``folders`` (image
folders and tar archives of them, with their decode cache) and ``download`` (the official
archives, fetched and verified). They import only the base modules of ``convzoo.data``; the
registry that maps a ``data.source`` string to one of them is ``convzoo.data.loading.registry``.
"""
