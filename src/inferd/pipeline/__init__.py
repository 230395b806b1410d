"""The one request pipeline (see pipeline.py) and its core stages, one module each.

    resolve → account → admit → schedule → respond

Capabilities are added as stages (`Server.pipeline.insert(stage, before="admit")`, the `inferd.stages`
entry-point group, or `--pipeline-stage MODULE:FACTORY`), never by editing a front door.
"""

from .account import AccountStage, failure_reason
from .admit import AdmitStage, int_parameter
from .call import SDK, Call, RequestContext
from .pipeline import Pipeline, Stage, as_infer_error
from .resolve import ResolveStage
from .respond import RespondStage
from .schedule import ScheduleStage

__all__ = ["SDK", "AccountStage", "AdmitStage", "Call", "Pipeline", "RequestContext", "ResolveStage",
           "RespondStage", "ScheduleStage", "Stage", "as_infer_error", "failure_reason", "int_parameter"]
