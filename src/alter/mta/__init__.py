"""Mixture-of-Task-Adapters: experts, gates, layers and their injection into a backbone."""

from alter.mta.config import MTAConfig
from alter.mta.experts import ExpertFusion, ExpertModule
from alter.mta.gate import TaskGate
from alter.mta.inject import UnsupportedBackboneError, inject_mta
from alter.mta.layer import MTALayer
from alter.mta.plan import ExpertPlan, plan_experts
from alter.mta.routing import RoutingError, current_routing, routing

__all__ = [
    "MTAConfig", "ExpertModule", "ExpertFusion", "TaskGate", "MTALayer", "inject_mta", "ExpertPlan", "plan_experts",
    "UnsupportedBackboneError", "RoutingError", "current_routing", "routing",
]
