"""Agent stage config: which tools the agent may call, its step cap, sampling and timeouts."""
from __future__ import annotations

from dataclasses import dataclass, field

from actors.common.config import check

# Must match actors.agent.tools.TOOL_CLASSES (kept literal here so the config imports nothing heavy).
KNOWN_TOOLS = ("calculator", "python", "search_docs")
STYLES = ("function_calling", "react", "code")   # = actors.agent.styles.STYLES


@dataclass
class AgentConfig:
    # Order matters: it is the order of `tools=[...]` in every request, and the model was fine-tuned
    # with synthetic.TOOLS = [calculator, python].
    tools: list[str] = field(default_factory=lambda: ["calculator", "python"])
    max_steps: int = 4                 # model calls per conversation (tool rounds + the final answer)
    n_eval: int = 32                   # held-out records evaluated
    temperature: float = 0.0
    max_tokens: int = 64
    request_timeout_s: float = 60.0    # one chat.completions request
    tool_timeout_s: float = 10.0       # one tool actor call
    n_transcripts: int = 3             # transcripts kept in the report
    # conversations run at once: the server batches their requests (continuous batching), so a CPU decode
    # step serves 8 conversations for about the price of one
    concurrency: int = 8
    # outside tool servers whose every tool the agent may call too: MCP servers by URL (streamable HTTP) or by
    # command (a list: the server speaks MCP on its stdin/stdout), OpenAPI tool servers by base URL
    mcp_servers: list = field(default_factory=list)
    openapi_servers: list[str] = field(default_factory=list)
    # function_calling (OpenAI tools), react (plain-text Thought/Action/Observation) or code (Python actions in
    # the sandbox; actors/agent/styles.py)
    style: str = "function_calling"
    # per-tool constructor options, e.g. {search_docs: {index: runs/x/index}, python: {sandbox: {wall_s: 10}}};
    # search_docs without an index gets one built over the data stage's documents (data.docs_sources)
    tool_options: dict = field(default_factory=dict)

    def __post_init__(self):
        check(isinstance(self.tools, (list, tuple)) and (len(self.tools) > 0 or self.mcp_servers
                                                         or self.openapi_servers), "agent.tools",
              f"must list tool names from {list(KNOWN_TOOLS)} (or give agent.mcp_servers / "
              f"agent.openapi_servers), got {self.tools!r}")
        for i, s in enumerate(self.mcp_servers):
            check(isinstance(s, str) and s.startswith("http") or isinstance(s, list) and s
                  and all(isinstance(a, str) for a in s), f"agent.mcp_servers[{i}]",
                  f"is an http(s) URL or a command as a list of strings, got {s!r}")
        for i, s in enumerate(self.openapi_servers):
            check(isinstance(s, str) and s.startswith("http"), f"agent.openapi_servers[{i}]",
                  f"is the http(s) base URL of an OpenAPI tool server, got {s!r}")
        check(self.style in STYLES, "agent.style", f"{self.style!r}: use one of {list(STYLES)}")
        for name in self.tool_options:
            check(name in self.tools, f"agent.tool_options.{name}", f"is not in agent.tools {self.tools}")
        self.tools = list(self.tools)
        for i, t in enumerate(self.tools):
            check(t in KNOWN_TOOLS, f"agent.tools[{i}]",
                  f"unknown tool {t!r}; use names from {list(KNOWN_TOOLS)}")
        check(len(set(self.tools)) == len(self.tools), "agent.tools", f"lists a tool twice: {self.tools}")
        check(self.max_steps >= 1, "agent.max_steps", f"must be >= 1 (one model call), got {self.max_steps}")
        check(self.n_eval >= 1, "agent.n_eval", f"must be >= 1 held-out record, got {self.n_eval}")
        check(0.0 <= self.temperature <= 2.0, "agent.temperature",
              f"must be in [0, 2] (0 = greedy), got {self.temperature}")
        check(self.max_tokens >= 1, "agent.max_tokens", f"must be >= 1, got {self.max_tokens}")
        check(self.request_timeout_s > 0, "agent.request_timeout_s",
              f"must be > 0 seconds, got {self.request_timeout_s}")
        check(self.tool_timeout_s > 0, "agent.tool_timeout_s", f"must be > 0 seconds, got {self.tool_timeout_s}")
        check(self.n_transcripts >= 0, "agent.n_transcripts", f"must be >= 0, got {self.n_transcripts}")
        check(self.concurrency >= 1, "agent.concurrency",
              f"must be >= 1 conversation at a time (1 = one after another), got {self.concurrency}")
