"""The ResNet track: networks, data, training (base and SMOT) and eval."""
