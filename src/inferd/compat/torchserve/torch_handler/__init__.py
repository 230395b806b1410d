"""TorchServe's built-in handlers: `base_handler`, `vision_handler`, `image_classifier`."""
