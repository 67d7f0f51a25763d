"""Stand-in components for optional pipeline inputs whose URI parameter is empty (see ``pipelines/inputs.py``)."""

from embedforge.components._common import BASE_IMAGE
from kfp import dsl


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def no_dataset(absent: dsl.Output[dsl.Dataset]):
    """Stand-in for a Dataset input whose URI parameter is empty (no pairs file, no external BEIR set)."""
    from embedforge.components._inputs import mark_absent

    mark_absent(absent)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def no_model(absent: dsl.Output[dsl.Model]):
    """Stand-in for the base-model input when ``base_model_uri`` is empty (``base_model_id`` is used)."""
    from embedforge.components._inputs import mark_absent

    mark_absent(absent)
