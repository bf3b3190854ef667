"""Model components: text encoders, layout adapter, attention processors, backbones."""
