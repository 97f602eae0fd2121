"""The loaded model, how it gets loaded at startup, and the dependencies that hand it to routes."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from api.settings import Settings
from engine import Matcher
from engine.artifacts import MANIFEST, ModelLoadError, ModelPathError

log = logging.getLogger("kefu.api")


class ModelHolder:
    """Holds the serving Matcher; `swap` is one attribute assignment, so readers never see a torn state.

    A request reads `current` once and keeps that Matcher for its whole duration, so a swap during a
    request does not mix two models.
    """

    def __init__(self, matcher: Matcher | None = None) -> None:
        self.current: Matcher | None = matcher

    def swap(self, new: Matcher | None) -> Matcher | None:
        """Put `new` in service and return the model it replaced."""
        old, self.current = self.current, new
        return old


def load_or_build(settings: Settings) -> Matcher | None:
    """The model at settings.model_path, built there from settings.kb_path if there is none yet.

    Returns None (and logs why) instead of raising, so the service still starts and reports the
    problem on /healthz and as 503s rather than crash-looping. A model that exists but cannot be
    loaded is left alone, not overwritten by a rebuild: someone should look at it.
    """
    path = settings.model_path
    if (path / MANIFEST).is_file():
        try:
            matcher = Matcher.load(path)
        except ModelLoadError as e:
            log.error("model not loaded: %s", e)
            return None
        log.info("loaded model from %s: %r kb_hash=%s", path, matcher, matcher.info.get("kb_hash"))
        if matcher.dense_enabled != settings.dense:
            log.warning(
                "model at %s has dense=%s; KEFU_DENSE only applies when building", path, matcher.dense_enabled
            )
        return matcher
    kb = settings.kb_path
    if kb is None:
        log.error("model not loaded: no model at %s and no KB configured (KEFU_KB_PATH)", path)
        return None
    log.info("no model at %s yet: building it from %s (dense=%s)", path, kb, settings.dense)
    try:
        matcher = Matcher.build(kb, dense=settings.dense)
    except (OSError, ValueError) as e:  # a missing file, or a KB that fails validation
        log.error("model not built from %s: %s", kb, e)
        return None
    log.info("built %r in %.1fs", matcher, matcher.info.get("build_seconds", 0.0))
    try:
        matcher.save(path)
        log.info("saved model to %s", path)
    except (OSError, ModelPathError) as e:  # still serve the fresh model; the next start rebuilds it
        log.warning("could not save the model to %s (%s); serving it from memory", path, e)
    return matcher


async def get_holder(request: Request) -> ModelHolder:
    """The app's ModelHolder (one per app, so tests can run several apps side by side).

    The dependencies here are `async def` although nothing in them waits: FastAPI runs a plain `def`
    dependency in its thread pool, a hop that costs more than the attribute read it wraps.
    """
    holder: ModelHolder = request.app.state.model_holder
    return holder


async def get_settings_dep(request: Request) -> Settings:
    """The settings this app was created with (not necessarily the process-wide ones)."""
    settings: Settings = request.app.state.settings
    return settings


async def get_matcher(holder: Annotated[ModelHolder, Depends(get_holder)]) -> Matcher:
    """The serving Matcher, or 503 while there is none."""
    return serving_matcher(holder)


async def get_serving_matcher(request: Request) -> Matcher:
    """get_matcher without the sub-dependency: one dependency to solve on the hot /v1/match route."""
    return serving_matcher(request.app.state.model_holder)


def serving_matcher(holder: ModelHolder) -> Matcher:
    """The holder's current Matcher, or the 503 that says none is loaded."""
    matcher = holder.current
    if matcher is None:
        raise HTTPException(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="no model is loaded: check KEFU_MODEL_PATH / KEFU_KB_PATH and the startup log",
        )
    return matcher


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
MatcherDep = Annotated[Matcher, Depends(get_matcher)]
ServingMatcher = Annotated[Matcher, Depends(get_serving_matcher)]
