"""Models as pure functions (``Model``) and the model zoo."""

from fedjaxscale.models.model import Model, accuracy, from_linen, softmax_cross_entropy
from fedjaxscale.models.zoo import FemnistCNN, femnist_cnn, femnist_cnn_flops_per_example, logistic_regression, mlp

__all__ = [
    "FemnistCNN",
    "Model",
    "accuracy",
    "femnist_cnn",
    "femnist_cnn_flops_per_example",
    "from_linen",
    "logistic_regression",
    "mlp",
    "softmax_cross_entropy",
]
