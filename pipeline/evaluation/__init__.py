"""Evaluation: a night's scores against labels (when given) and three unsupervised baselines.

``night`` evaluates one night (the summary the report renders), ``labels`` reads the
ground truth, ``metrics`` are pure quality functions, ``baselines`` the baselines and
``aggregates`` the unlabelled summary from Spark aggregates.
"""
