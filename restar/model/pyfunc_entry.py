"""Models-from-code entry point: MLflow runs this file to build the pyfunc (see restar.model.pyfunc)."""

from mlflow.models import set_model

from restar.model.pyfunc import RestarPyfunc

set_model(RestarPyfunc())
