"""vLLM plumbing without vLLM or a GPU: one-line refusals where it is absent, and exactly what would be launched.

``care grpo --use-vllm`` (TRL options for colocate/server), ``care eval --engine vllm`` (``vllm.LLM`` arguments,
token prompts, one ``LoRARequest`` per adapter; run against a fake ``vllm`` module) and ``carelab serve
--engine vllm`` (the ``vllm serve`` command line and the proxy in ``carelab.care.serve.vllm_proxy`` that adds the
``care`` quote check).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from carelab import vllm_support
from carelab.care.serve import vllm_proxy
from carelab.cli import app

HAS_VLLM = importlib.util.find_spec("vllm") is not None
TINY = "tiny-random-qwen2"


@pytest.fixture()
def qa_file(tmp_path) -> Path:
    from carelab.care.data import synth

    path = tmp_path / "qa.json"
    synth.write("hotpotqa", 3, 0, path, context_words=20, distractors=0)
    return path


def adapter_dir(tmp_path: Path, r: int = 8) -> str:
    folder = tmp_path / f"adapter-r{r}"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "peft_type": "LORA"}))
    return str(folder)


def one_line_error(result, needle: str) -> None:
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output, result.output


# --------------------------------------------------------------------------- absent vLLM: one clear line
@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_every_vllm_path_fails_in_one_line_without_vllm(qa_file, tmp_path):
    runner = CliRunner()
    one_line_error(runner.invoke(app, ["care", "eval", "--data", str(qa_file), "--out", str(tmp_path / "e"),
                                       "--model", TINY, "--engine", "vllm"]), "--engine vllm needs vLLM")
    one_line_error(runner.invoke(app, ["care", "grpo", "--easy", str(qa_file), "--out", str(tmp_path / "g"),
                                       "--model", TINY, "--use-vllm", "--vllm-mode", "server"]),
                   "--use-vllm needs vLLM")
    one_line_error(runner.invoke(app, ["serve", "--model", TINY, "--adapter", "none", "--engine", "vllm"]),
                   "serve --engine vllm needs vLLM")
    one_line_error(runner.invoke(app, ["care", "grpo", "--easy", str(qa_file), "--out", str(tmp_path / "g"),
                                       "--model", TINY, "--use-vllm", "--vllm-mode", "remote"]),
                   "--vllm-mode must be one of colocate, server")


# --------------------------------------------------------------------------- GRPO
def test_grpo_options_per_mode_and_the_server_command():
    assert vllm_support.grpo_options("colocate") == {"use_vllm": True, "vllm_mode": "colocate"}
    assert vllm_support.grpo_options("server", "http://gpu7:8000") == {
        "use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": "http://gpu7:8000"}
    assert vllm_support.grpo_server_command("Qwen/Qwen2.5-7B-Instruct", tensor_parallel=2, port=8001) == [
        "trl", "vllm-serve", "--model", "Qwen/Qwen2.5-7B-Instruct", "--tensor-parallel-size", "2", "--port", "8001"]
    with pytest.raises(vllm_support.VLLMUnavailable, match="test model"):
        vllm_support.model_path(TINY)


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_care_grpo_use_vllm_hands_trl_the_vllm_options(mode, qa_file, tmp_path, monkeypatch):
    """Up to the point TRL would start vLLM: the GRPOConfig arguments carelab builds from the CLI flags."""
    import trl

    recorded: dict = {}

    class Stop(Exception):
        pass

    class RecordingConfig(trl.GRPOConfig):
        def __init__(self, **kwargs):
            recorded.update(kwargs)
            raise Stop

    monkeypatch.setattr(vllm_support, "require_vllm", lambda what: None)
    monkeypatch.setattr(trl, "GRPOConfig", RecordingConfig)
    args = ["care", "grpo", "--easy", str(qa_file), "--out", str(tmp_path / "g"), "--model", TINY, "--use-vllm",
            "--vllm-mode", mode, "--report-to", "none", "--batch-size", "3", "--num-generations", "3"]
    if mode == "server":
        args += ["--vllm-server-url", "http://127.0.0.1:8011"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, Stop), result.output
    assert recorded["use_vllm"] is True and recorded["vllm_mode"] == mode
    assert recorded.get("vllm_server_base_url") == ("http://127.0.0.1:8011" if mode == "server" else None)


# --------------------------------------------------------------------------- eval against a fake vllm
@pytest.fixture()
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` package recording what carelab asks of it; every completion is 'Answer: Paris'."""
    calls: dict = {"llm": None, "generate": []}

    class Completion:
        def __init__(self, text):
            self.text = text

    class RequestOutput:
        def __init__(self, text):
            self.outputs = [Completion(text)]

    class LLM:
        def __init__(self, **kwargs):
            calls["llm"] = kwargs
            self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=2048))

        def generate(self, prompts, params, lora_request=None, use_tqdm=True):
            calls["generate"].append({"prompts": prompts, "params": params, "lora": lora_request})
            return [RequestOutput("Answer: Paris") for _ in prompts]

    def SamplingParams(**kwargs):  # noqa: N802 - vLLM's name
        return kwargs

    class LoRARequest:
        def __init__(self, name, lora_id, path):
            self.name, self.id, self.path = name, lora_id, path

    vllm = types.ModuleType("vllm")
    vllm.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_eval_engine_vllm_sends_token_prompts_and_one_lora_request_per_adapter(fake_vllm, qa_file, tmp_path):
    from carelab.care.eval.harness import EvalConfig, MethodSpec, predictions_path, run_eval
    from carelab.generation import chat_prompt_ids
    from carelab.models import load_tokenizer
    from carelab.runs import read_jsonl

    model_dir = tmp_path / "model"
    load_tokenizer(TINY).save_pretrained(model_dir)  # vLLM loads a folder; carelab only tokenizes here
    adapter = adapter_dir(tmp_path, r=12)
    cfg = EvalConfig(data=[str(qa_file)], methods=[MethodSpec("original"), MethodSpec("care", "CARE", adapter)],
                     out=str(tmp_path / "run"), model=str(model_dir), max_new_tokens=16, report=False,
                     engine="vllm", seed=3)
    run_eval(cfg, progress=False)
    assert fake_vllm["llm"] == {"model": str(model_dir), "dtype": "auto", "seed": 3, "enable_prefix_caching": True,
                                "enable_lora": True, "max_lora_rank": 16, "max_loras": 1}
    plain, care = fake_vllm["generate"]
    assert plain["lora"] is None and care["lora"].path == adapter
    assert plain["params"] == {"temperature": 0.0, "max_tokens": 16, "seed": 3, "skip_special_tokens": True}
    assert all(set(p) == {"prompt_token_ids"} for p in plain["prompts"] + care["prompts"])
    recs = [r for _, r in read_jsonl(predictions_path(cfg.out, "CARE", "qa"))]
    assert len(recs) == 3 and all(r["raw"] == "Answer: Paris" for r in recs)
    tok = load_tokenizer(TINY)
    first = recs[0]
    assert first["prompt_tokens"] == len(care["prompts"][0]["prompt_token_ids"])
    assert isinstance(chat_prompt_ids(tok, [{"role": "user", "content": "x"}]), list)


# --------------------------------------------------------------------------- serve
def test_serve_command_names_the_adapter_as_a_lora_module(tmp_path):
    adapter = adapter_dir(tmp_path, r=8)
    assert vllm_support.serve_command("HuggingFaceTB/SmolLM2-135M-Instruct", adapter, "127.0.0.1", 8001, "care-smol",
                                      max_model_len=4096) == [
        "vllm", "serve", "HuggingFaceTB/SmolLM2-135M-Instruct", "--host", "127.0.0.1", "--port", "8001",
        "--served-model-name", "care-smol", "--enable-lora", "--lora-modules", f"care={adapter}",
        "--max-lora-rank", "8", "--max-model-len", "4096"]
    assert "--enable-lora" not in vllm_support.serve_command("some/model", None, "127.0.0.1", 8001, "m")


CARE_REPLY = ("<think>The text says <retrieval>Paris is the capital of France.</retrieval> so Paris.</think>\n"
              "Answer: Paris")


def fake_upstream(seen: list) -> httpx.AsyncClient:
    """A vLLM OpenAI server stand-in: one CARE reply, as JSON or as three streamed chunks."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        body = json.loads(request.content)
        seen.append(body)
        if not body.get("stream"):
            return httpx.Response(200, json={"id": "x", "object": "chat.completion", "model": body["model"],
                                             "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                                 "role": "assistant", "content": CARE_REPLY}}]})
        pieces = [CARE_REPLY[:30], CARE_REPLY[30:70], CARE_REPLY[70:]]
        lines = [f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': p}}]})}\n\n" for p in pieces]
        return httpx.Response(200, text="".join(lines) + "data: [DONE]\n\n",
                              headers={"content-type": "text/event-stream"})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://vllm")


def test_proxy_routes_to_the_lora_module_and_adds_the_care_check():
    seen: list = []
    proxy = vllm_proxy.create_proxy_app("http://vllm", "care-smol", adapter=True, client=fake_upstream(seen))
    client = TestClient(proxy)
    messages = [{"role": "user", "content": "Paris is the capital of France.\n\nWhat is the capital of France?"}]
    reply = client.post("/v1/chat/completions", json={"model": "anything", "messages": messages}).json()
    assert seen[-1]["model"] == "care" and reply["model"] == "care-smol"
    check = reply["choices"][0]["care"]
    assert check["answer"] == "Paris" and check["well_formed"] is True
    assert check["quotes"] == [{"text": "Paris is the capital of France.", "match": "exact"}]

    streamed = client.post("/v1/chat/completions", json={"messages": messages, "stream": True}).text
    events = [line[6:] for line in streamed.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) == 5  # three passed through, the check, DONE
    final = json.loads(events[-2])["choices"][0]["care"]
    assert final["quotes"] == check["quotes"] and final["answer"] == "Paris"
    assert client.get("/health").json()["engine"] == "vllm"
