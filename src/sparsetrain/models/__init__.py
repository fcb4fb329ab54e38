"""The model zoo, registered by name: `build_model(name, input_shape, num_classes, ...)`.

Names: "mlp", "lenet300", "lenet5", "conv2", "conv4", "conv6", "cnn1d", "resnet20", "resnet32",
"resnet56", "vgg16", "vgg19", "resnet18", "resnet50", "wrn" (wide ResNets, WRN-22-2 by default), "gpt".
Importing a model module registers it; all are imported here. No torchvision. A user's own model: `package.module:factory` (see
:mod:`sparsetrain.models.registry` for the factory's contract).
"""

from sparsetrain.models import (  # noqa: F401  (register)
    cnn1d,
    conv,
    gpt,
    lenet,
    mlp,
    resnet,
    resnet_cifar,
    vgg,
    wide_resnet,
)
from sparsetrain.models.registry import (
    FACTORY_FORM,
    build_model,
    is_factory,
    list_models,
    load_factory,
    model_options,
    register_model,
)

__all__ = ["build_model", "list_models", "model_options", "register_model", "is_factory", "load_factory",
           "FACTORY_FORM"]
