from phage.api.models import ApiKey as ApiKey
from phage.api.models import KeyUsage as KeyUsage
from phage.api.models import NewApiKey as NewApiKey
from phage.api.models import Node as Node
from phage.api.models import PoolStatus as PoolStatus
from phage.api.models import Task as Task
from phage.api.models import TaskPage as TaskPage
from phage.api.models import TaskRef as TaskRef
from phage.client import Client as Client
from phage.client import PhageClientError as PhageClientError
from phage.client.sdk import PhageClient as _AsyncClient
from phage.errors import PhageError as PhageError

AsyncClient = _AsyncClient
__version__: str
__all__: list[str]
