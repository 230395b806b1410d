"""What other servers' users bring with them, adapted onto the core's own contracts and kept apart from them:
Seldon Core's wrapper classes (seldon/), Triton's python-backend API and TorchServe's handler API."""
