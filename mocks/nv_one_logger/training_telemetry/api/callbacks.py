"""``nv_one_logger.training_telemetry.api.callbacks``: application events, ignored."""


def on_app_start(*args: object, **kwargs: object) -> None:
    """Real one: records an application-start event. Mock: nothing to record."""


def on_app_end(*args: object, **kwargs: object) -> None:
    """Real one: records an application-end event. Mock: nothing to record."""
