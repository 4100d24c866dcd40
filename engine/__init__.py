"""phasebus: an event-driven workflow engine on trio.

Declare workflows as data (:class:`Workflow`, :class:`Step`, :class:`Job`),
run them with :func:`open_engine`, and listen and answer on its bus. What is
exported here is what programs using phasebus call; the modules behind it
(``engine._*``) are internal, and their other names may change.
"""

# Declaring workflows and jobs: frozen values, checked when built.
from ._definitions import CatchUp as CatchUp
from ._definitions import CronTrigger as CronTrigger
from ._definitions import Declarations as Declarations
from ._definitions import EmitEvent as EmitEvent
from ._definitions import EventTrigger as EventTrigger
from ._definitions import ExecuteCommand as ExecuteCommand
from ._definitions import Job as Job
from ._definitions import OnError as OnError
from ._definitions import PerformAction as PerformAction
from ._definitions import Step as Step
from ._definitions import StepAction as StepAction
from ._definitions import Surpass as Surpass
from ._definitions import Trigger as Trigger
from ._definitions import WaitForEvent as WaitForEvent
from ._definitions import Workflow as Workflow
from ._definitions import action_kind as action_kind

# Declarations and wire messages from and to plain JSON data.
from ._convert import message_from_json as message_from_json
from ._convert import unstructure_declaration as unstructure_declaration

# Running them: the engine, and what a registered command is given.
from ._engine import CommandContext as CommandContext
from ._engine import Engine as Engine
from ._engine import open_engine as open_engine
from ._registry import Definition as Definition

# What the engine answers: start decisions, running tasks, finished results.
from ._admission import StartDecision as StartDecision
from ._admission import StartResult as StartResult
from ._machine import Outcome as Outcome
from ._machine import StepEnd as StepEnd
from ._records import StepResult as StepResult
from ._records import TaskResult as TaskResult
from ._results import StepInfo as StepInfo
from ._results import TaskInfo as TaskInfo
from ._schedules import ScheduleFiring as ScheduleFiring
from ._tasklog import LogEntry as LogEntry
from ._tasklog import LogKind as LogKind

# The bus: messages, listeners and subscriptions (``engine.subscribers``).
from ._bus import Listener as Listener
from ._bus import Subscriber as Subscriber
from ._bus import SubscriberRegistry as SubscriberRegistry
from ._bus import Subscription as Subscription
from ._messages import Action as Action
from ._messages import ActionAbort as ActionAbort
from ._messages import ActionDone as ActionDone
from ._messages import ActionError as ActionError
from ._messages import ActionInfo as ActionInfo
from ._messages import ActionProgress as ActionProgress
from ._messages import Event as Event
from ._messages import Kind as Kind
from ._messages import Message as Message
from ._messages import Progress as Progress
from ._messages import ProgressLeaf as ProgressLeaf
from ._messages import ProgressTree as ProgressTree

# The message types of the events the engine publishes.
from ._bus import LISTENER_CONNECTED as LISTENER_CONNECTED
from ._bus import LISTENER_DISCONNECTED as LISTENER_DISCONNECTED
from ._config import CONFIG_DELETED as CONFIG_DELETED
from ._config import CONFIG_UPDATED as CONFIG_UPDATED
from ._rules import ERROR as ERROR
from ._rules import PROGRESS as PROGRESS
from ._rules import TASK_END as TASK_END
from ._rules import TASK_STARTED as TASK_STARTED
from ._schedules import SCHEDULE_FIRED as SCHEDULE_FIRED

# Configs (``engine.configs``).
from ._config import CORE_CONFIG as CORE_CONFIG
from ._config import Config as Config
from ._config import ConfigService as ConfigService

# Keeping tasks, history and configs across restarts.
from ._store import DEFAULT_RETENTION as DEFAULT_RETENTION
from ._store import SQLiteStore as SQLiteStore
from ._store import Store as Store
from ._store import open_store as open_store

# State diagrams of workflows.
from ._diagrams import diagram as diagram
from ._diagrams import dot_diagram as dot_diagram
from ._diagrams import mermaid_diagram as mermaid_diagram
from ._diagrams import svg_diagram as svg_diagram

# Errors: every one is a PhasebusError.
from ._errors import ConfigConflict as ConfigConflict
from ._errors import DeclarationError as DeclarationError
from ._errors import DefinitionConflict as DefinitionConflict
from ._errors import DiagramError as DiagramError
from ._errors import EngineClosed as EngineClosed
from ._errors import GraphvizNotFound as GraphvizNotFound
from ._errors import InvalidInputError as InvalidInputError
from ._errors import ListenerDropped as ListenerDropped
from ._errors import ListenerError as ListenerError
from ._errors import MessageError as MessageError
from ._errors import PhasebusError as PhasebusError
from ._errors import Problem as Problem
from ._errors import StoreError as StoreError
from ._errors import UnknownTaskError as UnknownTaskError
from ._errors import UnknownWorkflowError as UnknownWorkflowError

__version__ = "0.1.0"
