"""Data curation logic without Ray: PII redaction, language ID, extraction bench scoring."""
from __future__ import annotations

from pathlib import Path

import pytest

from actors.data import pii


@pytest.mark.parametrize("text, want, kinds", [
    ("Write to jane.doe+news@example.co.uk or call (415) 555-2671 today.",
     "Write to <EMAIL> or call <PHONE_NUMBER> today.", {"email": 1, "phone_number": 1}),
    ("Hosts 192.168.1.20 and 2001:db8::8a2e:370:7334 were down; IP 10.0.0.1.",
     "Hosts <IP_ADDRESS> and <IP_ADDRESS> were down; IP <IP_ADDRESS>.", {"ip_address": 3}),
    ("身份证号码 11010519491231002X，电话 +86 138 0013 8000。",
     "身份证号码 <CN_RESIDENT_ID>，电话 <PHONE_NUMBER>。", {"cn_resident_id": 1, "phone_number": 1}),
    ("Card 4111 1111 1111 1111 or 4111-1111-1111-1111.", "Card <CARD_NUMBER> or <CARD_NUMBER>.",
     {"card_number": 2}),
    ("Call +44 20 7946 0958 or 010-12345678.", "Call <PHONE_NUMBER> or <PHONE_NUMBER>.", {"phone_number": 2}),
])
def test_pii_each_kind_replaced_and_counted(text, want, kinds):
    got, counts = pii.redact(text)
    assert got == want and dict(counts) == kinds


@pytest.mark.parametrize("text", [
    "Upgrade to v1.2.3.4 or version 2.10.4.1; python 3.11.4 is fine.",      # versions, not addresses
    "Released 1.2.3.4.5 on 2024-01-15 at 12:30:45; ISBN 978-3-16-148410-0; 1999-2005.",  # dates, times, ISBN
    "Order 1234 5678 9012 3456 fails Luhn; 0000 0000 0000 0000 is filler.",   # not card numbers
    "ID 110105194912310021 has a wrong check digit; 110105199913310027 no such date.",
    "Email me at name at example dot com; the ratio was 1:2:3.",
])
def test_pii_leaves_lookalikes_alone(text):
    got, counts = pii.redact(text)
    assert got == text and not counts


def test_cn_id_and_luhn_checks():
    assert pii.cn_id_valid("11010519491231002X") and pii.cn_id_valid("11010519491231002x")
    assert not pii.cn_id_valid("110105194912310021")
    assert pii.luhn_valid("4111111111111111") and not pii.luhn_valid("4111111111111112")


def test_language_id_offline(data_root):
    import gzip
    import json

    from actors.data import lid

    assert lid.model_path().name == "lid.176.ftz"
    assert lid.detect("The committee will publish its findings on the river survey next week.")[0] == "en"
    assert lid.detect("")[1] == 0.0
    assert lid.detect("みんなのおのおののなかのすべてですから")[0] == "ja"     # kana: Japanese
    assert lid.detect("子曰學而時習之不亦說乎有朋自遠方來不亦樂乎")[0] == "zh"  # Han only: never Japanese
    rows = [json.loads(x) for x in gzip.open(data_root / "zh_classical" / "zh_classical.jsonl.gz")]
    long = [r["text"] for r in rows if len(r["text"]) >= 200][:40]
    assert sum(lid.detect(t)[0] == "zh" for t in long) >= 0.95 * len(long)


def test_extraction_bench_scoring_matches_the_benchmark_definition():
    from bench.data_extraction import page_counts, score

    body = "one two three four five six seven"
    assert page_counts(body, body) == (1.0, 0.0, 0.0)
    tp, fp, fn = page_counts(body, body + " extra words here now")   # 4 shingles true, 4 more predicted
    assert (tp, fp, fn) == pytest.approx((4 / 8, 4 / 8, 0.0))
    s = score([(1.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.0, 0.0, 1.0)])   # the empty prediction has no precision
    assert s["precision"] == pytest.approx(0.75) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * 0.75 * (2 / 3) / (0.75 + 2 / 3))


# ------------------------------------------------------------------------------------------ pipelines

def _corpus(data_root, tmp_path):
    """Real documents (HTML, Markdown, PDF incl. vertical Japanese, C4 JSONL with planted PII) and a
    corrupt-input set: empty file, UTF-16 with and without BOM, invalid UTF-8, truncated gzip, a 20 MB line,
    200 random 7-bit blobs, binary data named .txt."""
    import gzip
    import json
    import random
    import shutil

    src = tmp_path / "src"
    (src / "blobs").mkdir(parents=True)
    d = data_root / "doc_extraction"
    for p in [*(d / "html").glob("*__source.html"), *(d / "markdown").glob("*.md"), *(d / "pdf").glob("*.pdf")]:
        shutil.copy(p, src / p.name)
    rows = [json.loads(x) for x in (data_root / "pretrain_demo_llamafactory" / "c4_demo.jsonl").open()][:40]
    rows[3]["text"] += " Write to press@example.org or call +1 415 555 2671."
    (src / "c4.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    words = rows[6]["text"].split()
    near = " ".join(w if i % 40 else w.upper() + "s" for i, w in enumerate(words))   # a few words edited
    (src / "c4_copy.jsonl").write_text(json.dumps(rows[5]) + "\n" + json.dumps({"text": near}) + "\n")
    good_en = ("The river rose through the night, and by morning the lower fields were under water. "
               "Farmers moved their animals to the hill pastures and waited for the rain to stop. ") * 3
    (src / "empty.txt").write_bytes(b"")
    (src / "utf16_bom.txt").write_bytes(good_en.replace("river", "creek").encode("utf-16"))
    (src / "utf16_nobom.txt").write_bytes(good_en.replace("river", "stream").encode("utf-16-le"))
    (src / "bad_utf8.txt").write_bytes(good_en.encode() + b"\xff\xfe broken")
    full = gzip.compress(b"".join(json.dumps({"text": f"{good_en} Part {i}."}).encode() + b"\n"
                                  for i in range(50)))
    (src / "cut.jsonl.gz").write_bytes(full[: len(full) // 2])
    (src / "huge_line.txt").write_bytes(b"word " * (4 << 20))  # 20 MB, one line
    rng = random.Random(0)
    for i in range(200):
        (src / "blobs" / f"blob{i:03d}.txt").write_bytes(bytes(rng.randrange(128) for _ in range(600)))
    (src / "binary.txt").write_bytes(bytes(range(256)) * 8)
    return src


def _cfg(src, executor="local", files_per_shard=7):
    from actors.data.config import SourceConfig
    from actors.data.curate import CurateConfig

    return CurateConfig(inputs=[SourceConfig("top", str(src / "*.*")), SourceConfig("blobs", str(src / "blobs/*"))],
                        files_per_shard=files_per_shard, executor=executor)


def _files(out):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = pa.concat_tables([pq.read_table(f) for f in sorted((out / "dedup" / "docs").glob("*.parquet"))])
    dropped = pa.concat_tables([pq.read_table(f, columns=["id", "stage", "rule"])
                                for f in sorted((out / "dropped").glob("*/*.parquet"))])
    return (sorted(zip(*(docs.column(c).to_pylist() for c in ("id", "text", "lang", "extractor", "meta")))),
            sorted(zip(*(dropped.column(c).to_pylist() for c in ("id", "stage", "rule")))))


def test_corrupt_inputs_are_counted_and_no_good_document_is_lost(data_root, tmp_path):
    import json

    from actors.data.curate import run_curation

    src = _corpus(data_root, tmp_path)
    out = tmp_path / "out"
    r = run_curation(_cfg(src), out, data_root)
    rules = r["dropped_by_rule"]
    assert r["read"] == r["kept"] + r["dropped"]
    docs, dropped = _files(out)
    texts = {i.rsplit("/", 1)[-1]: t for i, t, *_ in docs}
    assert "creek" in texts["utf16_bom.txt"] and "stream" in texts["utf16_nobom.txt"]  # decoded, not dropped
    assert rules["read:quarantine:binary"] >= 1 and rules["read:quarantine:invalid_utf8"] == 1
    assert rules["read:quarantine:unreadable"] == 1 and rules["filters:max_chars"] == 1   # truncated gzip, 20 MB
    assert rules["normalize:empty"] >= 1                                                # the empty file
    blobs = [x for x in dropped if "/blobs/" in x[0] or x[0].startswith("blobs/")]
    assert len(blobs) >= 0.95 * 200 and not any(i.startswith("blobs/") for i in texts)
    kept_cut = [t for i, t in texts.items() if i.startswith("cut.jsonl.gz")]
    assert 0 < len(kept_cut) < 50                                    # the lines before the damage survive
    assert sum(i.startswith("c4.jsonl") for i in texts) == 40        # every good C4 document is kept
    assert not any(i.startswith("c4_copy.jsonl") for i in texts)     # ... and its later copies are not
    drops = {(i.rsplit("/", 1)[-1], stage, rule) for i, stage, rule in dropped}
    assert ("c4_copy.jsonl:1", "dedup", "exact_duplicate") in drops
    assert ("c4_copy.jsonl:2", "dedup", "near_duplicate") in drops
    assert r["dedup"]["exact_duplicates"] >= 1 and r["dedup"]["clusters"] >= 2
    assert "<EMAIL>" in texts["c4.jsonl:4"] and "<PHONE_NUMBER>" in texts["c4.jsonl:4"]
    assert r["counters"]["pii"]["email"] >= 1
    assert texts["us_copyright_office_dmca.pdf"].startswith("U.S. Copyright Office Summary")
    assert "風景やみんなといっしょに" in texts["jo_japanese.pdf"]
    assert r["languages"]["en"] > 40 and r["languages"].get("ja", 0) >= 1
    card = json.loads((out / "card.json").read_text())
    assert card["reconciles"] and (out / "length_hist.png").stat().st_size > 1000
    assert "near_duplicate" in (out / "card.md").read_text() and card["throughput"]["language"]["docs"] > 40


@pytest.mark.ray
def test_ray_data_executor_writes_what_the_local_one_does(ray_session, data_root, tmp_path):
    from actors.data.curate import run_curation

    src = _corpus(data_root, tmp_path)
    # 60 files a shard: 5 shards (each Ray Data block costs a task per operator, ~1 s on 2 cores)
    local = run_curation(_cfg(src, "local", 60), tmp_path / "local", data_root)
    on_ray = run_curation(_cfg(src, "ray", 60), tmp_path / "ray", data_root)
    assert on_ray["run"]["executor"] == "ray" and on_ray["run"]["shards"] == local["run"]["shards"] > 2
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")
    same = lambda r: {k: v for k, v in r.items() if k not in ("run", "throughput")}  # noqa: E731
    assert same(on_ray) == same(local)
    assert set(on_ray["throughput"]) == {"read", "normalize", "filters", "language", "pii"}


def test_a_killed_run_resumes_from_its_complete_shards(data_root, tmp_path):
    """Both executors skip a shard whose kept file exists (`pipeline.start_run`); a shard killed mid-write
    left only a temporary file, which is not a kept file."""
    from actors.data.curate import run_curation

    src = _corpus(data_root, tmp_path)
    first = run_curation(_cfg(src, "local", 30), tmp_path / "once", data_root)
    out = tmp_path / "killed"
    run_curation(_cfg(src, "local", 30), out, data_root)
    parts = sorted((out / "docs").glob("*.parquet"))
    for p in parts[-2:]:
        p.unlink()                                       # the last two shards never finished
    (out / "docs" / ".part-00001.parquet.tmp-1").write_bytes(b"half-written")
    again = run_curation(_cfg(src, "local", 30), out, data_root)
    assert again["run"]["skipped"] == len(parts) - 2 == first["run"]["shards"] - 2
    assert _files(out) == _files(tmp_path / "once")


# ------------------------------------------------------------------------------------------ quality rules

_VOCAB = ("river farmer market bridge council weather harvest village engineer teacher station garden "
          "mountain library doctor winter summer morning evening journey letter window kitchen forest").split()


def _sentence(rng, n=14):
    ws = [rng.choice(_VOCAB) for _ in range(n)]
    ws[0], ws[3], ws[6], ws[9] = "The", "of", "and", "with"
    return " ".join(ws) + "."


def _doc(lines=10, seed=0, per_line=2):
    import random

    rng = random.Random(seed)
    return "\n".join(" ".join(_sentence(rng) for _ in range(per_line)) for _ in range(lines))


def test_good_english_document_passes_every_rule_set():
    from actors.data.quality import QualityConfig, apply_rules

    rule, text = apply_rules(_doc(), "en", QualityConfig())
    assert rule is None and text == _doc()


@pytest.mark.parametrize("make, rule", [
    (lambda d: "\n".join(d.split("\n")[:2])[:300], "gopher_short_doc"),
    (lambda d: d + "\n" + "\n".join([d.split("\n")[0]] * 6), "dup_line_frac"),
    (lambda d: d + "\n\n" + "\n\n".join([d] * 2), "dup_para_frac"),
    (lambda d: d + " " + " ".join(["crop rotation"] * 200) + ".", "top_2_gram"),
    (lambda d: d + "\n" + " ".join(f"#tag{i}" for i in range(60)) + ".", "gopher_too_many_hashes"),
    (lambda d: "\n".join("- " + ln for ln in d.split("\n")), "gopher_too_many_bullets"),
    (lambda d: d.replace(" of ", " ... ").replace(" with ", " ... "), "gopher_too_many_ellipsis"),
    (lambda d: "\n".join(ln[:-1] + "..." for ln in d.split("\n")), "gopher_too_many_end_ellipsis"),
    (lambda d: " ".join(w for w in d.split() if w not in ("The", "of", "and", "with")), "gopher_few_stop_words"),
    (lambda d: d + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "c4_lorem_ipsum"),
    (lambda d: d + "\nThe config is {\"a\": 1} as shown in the manual.", "c4_curly_bracket"),
    (lambda d: d.replace(".", ""), "c4_too_few_sentences"),
])
def test_each_rule_drops_its_document(make, rule):
    from actors.data.quality import QualityConfig, apply_rules

    assert apply_rules(make(_doc()), "en", QualityConfig())[0] == rule


def test_c4_removes_lines_and_fineweb_rules():
    from actors.data.quality import FineWebRules, QualityConfig, apply_rules, words

    d = _doc()
    noisy = d + "\nThis site uses cookies to improve your experience.\nPlease enable JavaScript to view the map.\nShare"
    rule, text = apply_rules(noisy, "en", QualityConfig())
    assert rule is None and text == d                     # cookie, javascript and short lines removed
    fw = FineWebRules()
    short = "\n".join([f"Menu item {i}" for i in range(30)] + [d])
    assert fw(short, words(short)) == "fineweb_short_line_ratio"
    no_punct = d.replace(".", ",")
    assert fw(no_punct, words(no_punct)) == "fineweb_line_punct_ratio"
    dup = d + "\n" + d.split("\n")[0]
    assert fw(dup, words(dup)) == "fineweb_char_dup_ratio"
    listy = "\n".join(f"{w * 6} {i}." for i, w in enumerate(_VOCAB * 2))   # lines of 2 words
    assert fw(listy, words(listy)) == "fineweb_list_ratio"
    assert apply_rules("word " * 300_000, "en", QualityConfig())[0] == "max_chars"


def test_chinese_documents_get_cjk_rules(data_root):
    import gzip
    import json

    from actors.data.quality import QualityConfig, apply_rules

    rows = [json.loads(x) for x in gzip.open(data_root / "zh_classical" / "zh_classical.jsonl.gz")]
    long = [r["text"] for r in rows if len(r["text"]) >= 200][:30]
    cfg = QualityConfig()
    assert sum(apply_rules(t, "zh", cfg)[0] is None for t in long) >= 0.9 * len(long)
    assert apply_rules(long[0], "en", cfg)[0] == "gopher_short_doc"     # routed by language: words would fail
    assert apply_rules("床前明月光，疑是地上霜。", "zh", cfg)[0] == "zh_short_doc"
    assert apply_rules(long[0][:150] + " ABC123 " * 60, "zh", cfg)[0] == "zh_low_cjk_ratio"


def test_chinese_rules_each_on_a_made_document(data_root):
    import gzip
    import json
    import random

    from actors.common.config import ConfigError
    from actors.data.quality import ChineseRules, QualityConfig, apply_rules

    rows = [json.loads(x) for x in gzip.open(data_root / "zh_classical" / "zh_classical.jsonl.gz")]
    good = next(r["text"] for r in rows if 300 <= len(r["text"]) <= 600 and ChineseRules()(r["text"]) is None)
    rng = random.Random(0)
    mojibake = "中文网页内容".encode("utf-8").decode("cp1252")       # UTF-8 read as Windows-1252
    lottery = "\n".join("双色球开奖号码：" + " ".join(f"{rng.randrange(100):02d}" for _ in range(6)) + "。"
                        for _ in range(40))
    menu = "\n".join(f"栏目{i}" for i in range(4 * len(good.splitlines())))   # 80% of the lines
    ad = "欢迎光临本站最新优惠活动火热进行中" * 20
    made = {
        "zh_garbled": good + "锟斤拷" * 4,
        "zh_special_chars": good + "★☆♥◆" * 60,
        "zh_digit_ratio": good[:80] + "\n" + lottery,
        "zh_short_line_ratio": good + "\n" + menu,
        "zh_dup_line_char_frac": good + ("\n" + good.split("\n")[0]) * 4,
        "zh_dup_char_ngrams": good[:100] + "\n" + ad + "。",
        "zh_blocklist": good + "\n百家乐、六合彩、娱乐城，注册即送彩金。",
    }
    cfg = QualityConfig()
    assert apply_rules(good, "zh", cfg)[0] is None
    assert apply_rules(good + mojibake * 2, "zh", cfg)[0] == "zh_garbled"
    for rule, doc in made.items():
        assert apply_rules(doc, "zh", cfg)[0] == rule, rule
    assert apply_rules(good + "\n警方破获一起网上博彩案。", "zh", cfg)[0] is None   # one phrase: news, kept
    # thresholds come from config: a stricter blocklist drops the news story, a looser digit rule keeps the table
    assert ChineseRules(max_blocklist_hits=1)(good + "\n警方破获一起网上博彩案。") == "zh_blocklist"
    assert ChineseRules(max_digit_ratio=0.9)(made["zh_digit_ratio"]) != "zh_digit_ratio"
    with pytest.raises(ConfigError, match="quality.chinese.max_digit_ratio"):
        ChineseRules(max_digit_ratio=40)


# ------------------------------------------------------------------------------------------ near-dedup

def _random_graphs(n_graphs=12):
    import random

    for seed in range(n_graphs):
        rng = random.Random(seed)
        n = rng.randint(2, 200)
        edges = [(rng.randrange(n), rng.randrange(n)) for _ in range(rng.randint(1, 250))]
        edges += [(1000 + i, 1001 + i) for i in range(rng.randint(0, 40))]   # a long chain: many rounds
        yield edges


def test_star_components_equal_union_find():
    from actors.data.minhash import star_components, union_find

    for edges in _random_graphs(40):
        want = union_find(edges)
        got = star_components(edges)
        assert {k: got[k] for k in want} == want


@pytest.mark.ray
def test_distributed_connected_components_equal_union_find(ray_session):
    from actors.data.minhash import union_find
    from actors.data.ray_executor import ray_connected_components

    for i, edges in enumerate(_random_graphs(3)):
        want = union_find(edges)
        got = ray_connected_components(edges, parts=1 + i % 3)
        assert {k: got[k] for k in want} == want


def test_minhash_finds_near_duplicates_and_not_shared_boilerplate():
    import random

    from actors.data.minhash import MinHashConfig, MinHasher

    rng = random.Random(0)
    vocab = sorted({"".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(3000)})
    # (letters only: normalisation maps every number to 0)
    base = " ".join(rng.choice(vocab) for _ in range(300))
    toks = base.split()
    edited = " ".join(t if rng.random() > 0.01 else rng.choice(vocab) for t in toks)   # Jaccard ~0.9
    other = " ".join(rng.choice(vocab) for _ in range(300))
    boiler = " ".join(toks[:100]) + " " + " ".join(rng.choice(vocab) for _ in range(200))  # shares 1/3
    mh = MinHasher(MinHashConfig())
    keys = {k: set(enumerate(mh.band_keys(mh.signature(t)))) for k, t in
            {"base": base, "edited": edited, "other": other, "boiler": boiler}.items()}
    sh = {k: set(mh.shingles(t).tolist()) for k, t in (("base", base), ("edited", edited))}
    assert len(sh["base"] & sh["edited"]) / len(sh["base"] | sh["edited"]) > 0.85
    assert keys["base"] & keys["edited"]
    assert not keys["base"] & keys["other"] and not keys["base"] & keys["boiler"]
    assert mh.signature("too short") is None
    assert 0.7 < MinHashConfig().threshold < 0.75


def test_decontamination_catches_a_planted_benchmark_row(data_root, tmp_path):
    import json

    from actors.data.config import SourceConfig
    from actors.data.curate import CurateConfig, StageSpec, run_curation
    from actors.data.decontam import write_rows

    arc = [json.loads(x) for x in (data_root / "arc" / "arc_easy_test_rows0-199.jsonl").open()][:50]
    q = next(r["question"]["stem"] for r in arc if len(r["question"]["stem"].split()) >= 16)
    rows = write_rows({"arc_easy": [json.dumps(r, ensure_ascii=False) for r in arc],
                       "poems": ["床前明月光，疑是地上霜。举头望明月，低头思故乡。"]}, tmp_path / "rows.json")
    src = tmp_path / "src"
    src.mkdir()
    clean = [json.loads(x)["text"] for x in (data_root / "pretrain_demo_llamafactory" / "c4_demo.jsonl").open()][:20]
    planted = clean[0] + "\n" + f"Quiz time. {q} Think about it before you answer."
    zh = "唐诗三百首中李白写道：床前明月光，疑是地上霜。举头望明月，低头思故乡。这首诗流传很广。"
    (src / "docs.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                                            for t in [planted, *clean[1:], zh]))
    cfg = CurateConfig(inputs=[SourceConfig("d", str(src / "docs.jsonl"))], executor="local",
                       stages=[StageSpec("normalize"), StageSpec("decontam", {"rows": str(rows)})])
    r = run_curation(cfg, tmp_path / "out", data_root)
    assert len(q.split()) >= 13
    assert r["dropped_by_rule"] == {"decontam:contaminated": 2}
    assert r["contamination"] == {"arc_easy": 1, "poems": 1} and r["kept"] == 19
    flag = CurateConfig(inputs=cfg.inputs, executor="local",
                        stages=[StageSpec("decontam", {"rows": str(rows), "mode": "flag"})])
    r = run_curation(flag, tmp_path / "flag", data_root)
    assert r["kept"] == 21 and r["contamination"] == {"arc_easy": 1, "poems": 1}


def test_shards_close_at_file_count_or_input_size(tmp_path):
    from actors.common.config import ConfigError
    from actors.data.config import CurateConfig, SourceConfig
    from actors.data.curate import plan_shards

    for i, kb in enumerate([600, 600, 100, 100, 100, 2000]):
        (tmp_path / f"f{i}.txt").write_bytes(b"a" * kb * 1024)
    src = [SourceConfig("t", str(tmp_path / "*.txt"), "text")]
    sizes = [len(s) for s in plan_shards(src, tmp_path, files_per_shard=3, timeout_s=5, shard_mb=1.0)]
    assert sizes == [1, 3, 1, 1]  # 600 | 600+100+100 (3 files) | 100 | 2000 kB alone (past the first file)
    assert [len(s) for s in plan_shards(src, tmp_path, 4, 5)] == [4, 2]
    with pytest.raises(ConfigError, match="curate.shard_mb"):
        CurateConfig(inputs=src, shard_mb=0)


@pytest.mark.ray
def test_curated_documents_are_packed_into_pretraining_shards(ray_session, data_root, tmp_path):
    """data.pack: the curation run's documents (Parquet) are then tokenized and packed as the demo's corpus is,
    and the packed rows decode back to curated text."""
    import pyarrow.parquet as pq

    from actors.data.transforms import load_fast_tokenizer
    from actors.model.tokenizer import document_end_id
    from jobs.config import load_config
    from jobs.runner import run_stages

    yaml = tmp_path / "web.yaml"
    yaml.write_text("""
run: {name: web, stages: [data]}
pretrain: {seq_len: 64}
data:
  pack: true
  vocab_size: 400
  seq_len: 64
  val_fraction: 0.1
  synthetic: {n_train: 4, n_heldout: 2}
  sft_sources: []
  curate:
    executor: local
    inputs:
      - {name: c4, path: pretrain_demo_llamafactory/c4_demo.jsonl}
      - {name: markdown, path: "doc_extraction/markdown/*.md"}
    stages: [{stage: normalize}, {stage: language}, {stage: quality}]
""")
    st = run_stages(load_config(str(yaml)), tmp_path / "run", stages=["data"]).stage("data")
    m, o = st["metrics"], st["outputs"]
    cur = m["curation"]
    assert cur["read"] == cur["kept"] + cur["dropped"] and 0 < cur["kept"] < cur["read"]
    # every curated document is read back by the packing pass, none quarantined
    assert m["read"] == cur["kept"] and not m["quarantined"]
    assert m["read"] == m["kept"] + sum(m["dropped"].values())
    assert m["train_tokens"] > 0 and m["train_sequences"] > 0
    curated = " ".join(t for f in sorted(Path(o["curated_dir"]).glob("*.parquet"))
                       for t in pq.read_table(f).column("text").to_pylist())
    tok = load_fast_tokenizer(o["tokenizer_dir"])
    row = pq.read_table(sorted(Path(o["train_dir"]).glob("*.parquet"))[0]).column("input_ids")[0].as_py()
    eos = document_end_id(tok)
    pieces = [[]]
    for t in row:  # the row's documents, split at their end tokens
        pieces[-1].append(t) if t != eos else pieces.append([])
    words = tok.decode(max(pieces, key=len)).split()[1:-1]   # a piece may start or end mid-word
    assert len(words) >= 3 and " ".join(words) in " ".join(curated.split())
