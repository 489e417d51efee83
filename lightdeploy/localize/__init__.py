"""`lightdeploy parity DIR --localize`: the first nn.Module whose output leaves the artifact's row.

It sits beside the pipeline, above exporters and parity, because it uses both: parity's checks judge
each module, and the TFLite side re-converts the eager model with the exporter's own decompositions.
"""

from lightdeploy.localize.search import LocalizeReport, check_localizable, localize

__all__ = ["localize", "LocalizeReport", "check_localizable"]
