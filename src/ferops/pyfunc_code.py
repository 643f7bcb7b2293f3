"""The served model as MLflow "models from code": `log_pyfunc_model` logs this file, MLflow copies it beside the
model and runs it whenever the model loads. Nothing is pickled, so the model loads (and `mlflow models serve`
serves it) with MLflow's pickle loading turned off (MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false).

Not a library module: it registers the model on import (MLflow's contract), so nothing in ferops imports it.
"""

from mlflow.models import set_model

from ferops.inference import FerPyfunc

set_model(FerPyfunc())
