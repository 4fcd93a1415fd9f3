"""The evaluation protocols: one module each, registered with `@register_protocol` and discovered by name."""
