"""Models as pure functions (``Model``) and the model zoo."""

from fedjaxscale.models.conv import Conv, conv_implementation, current_conv_implementation, with_conv_implementation
from fedjaxscale.models.model import Model, accuracy, from_linen, softmax_cross_entropy
from fedjaxscale.models.sequence import (
  SpecialTokens,
  sequence_accuracy,
  sequence_cross_entropy,
  shakespeare_lstm,
  shakespeare_seq_lstm,
  stackoverflow_lstm,
)
from fedjaxscale.models.vision import resnet18_gn, speech_cnn
from fedjaxscale.models.zoo import FemnistCNN, femnist_cnn, femnist_cnn_flops_per_example, logistic_regression, mlp

__all__ = [
  "Conv",
  "FemnistCNN",
  "Model",
  "SpecialTokens",
  "accuracy",
  "conv_implementation",
  "current_conv_implementation",
  "femnist_cnn",
  "femnist_cnn_flops_per_example",
  "from_linen",
  "logistic_regression",
  "mlp",
  "resnet18_gn",
  "sequence_accuracy",
  "sequence_cross_entropy",
  "shakespeare_lstm",
  "shakespeare_seq_lstm",
  "softmax_cross_entropy",
  "speech_cnn",
  "stackoverflow_lstm",
  "with_conv_implementation",
]
