"""Applications of qwenscope, built only on the core's public API; nothing in the core imports them."""
