"""The one statistics helper of the science code: figures over seeds."""
import numpy as np


def mean_sd(values):
    """[value per seed] -> {'mean', 'sd' (ddof 1; 0 for one seed), 'per_seed'}"""
    a = np.asarray(values, np.float64)
    return dict(mean=float(a.mean()), sd=float(a.std(ddof=1)) if len(a) > 1 else 0.0, per_seed=a.tolist())


def pm(stats, digits=1):
    """{mean, sd} -> 'mean ± sd' at `digits` decimals (a report cell)"""
    return f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"
