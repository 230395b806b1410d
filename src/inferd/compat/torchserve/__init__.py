"""TorchServe's handler API (`ts`), as inferd provides it to the handlers of `.mar` archives.

Inside an instance process that runs a TorchServe handler, this package is importable as `ts` (see
`inferd.compat.torchserve_handlers.install_ts_package`), so a handler's `from ts.torch_handler.base_handler import
BaseHandler` works unchanged. Nothing is installed under the top-level name `ts`: a real TorchServe install in the same
environment is left as it is, and the server process never imports this package under that name.

Provided: `ts.context` (Context, RequestProcessor), `ts.utils.util` (PredictionException, map_class_to_label,
load_label_mapping, list_classes_from_module), `ts.torch_handler.base_handler`, `.vision_handler` and
`.image_classifier`. Not provided: text_classifier, object_detector, image_segmenter, explanations (Captum),
the profiler and TorchServe's metrics backend (`context.metrics` records values in memory only).
"""
