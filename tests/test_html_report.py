"""The HTML report: one self-contained page for runs, lottery runs and a reproduction study, built from real
command-line runs (``sparsetrain reproduce --tiny``, then ``sparsetrain report --html``) and rendered in a real
headless Chromium (Debian's ``chromium`` package; skipped where it is not installed)."""

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from sparsetrain.cli import main
from sparsetrain.studies.html_report import markdown_html, render_html_report, write_html_report
from sparsetrain.experiment.rundir import find_runs

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here (Debian: apt-get install "
                                                              "chromium; .ci/run installs it)")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """``reproduce --tiny`` (harness runs, an IMP lottery run, a plasticity study, reproduction.md; the dynamic
    runs log their topology updates), then ``report --html``: the page written beside them."""
    root = tmp_path_factory.mktemp("html")
    assert main(["reproduce", "--tiny", "--runs-dir", str(root / "runs"), "--out", str(root / "runs" / "results"),
                 "--workers", "1"]) == 0
    page = root / "report" / "index.html"
    assert main(["report", "--runs-dir", str(root / "runs"), "--html", str(page)]) == 0
    rigl = next(r for r in find_runs(root / "runs" / "tiny") if r.path.parent.name.startswith("rigl"))
    return root, page, rigl


def _images(text):
    return re.findall(r'<img src="([^"]*)"', text)


def test_page_is_self_contained_and_complete(study):
    root, page, rigl = study
    text = page.read_text()
    runs = list(find_runs(root / "runs" / "tiny"))
    assert len(runs) == 8  # dense and 7 sparse rows of the tiny grid
    for run in runs:
        assert f'id="run-{run.path.parent.name}-seed_0"' in text
    # every harness run shares one recipe but rigl_3x, trained 3x the epochs
    assert text.count("<h2>Recipe: synthetic / mlp") == 2
    assert "<h2>Lottery run: synthetic-mlp-" in text and "<h2>Study: " in text
    assert "<h3>Reproduction benchmark (tiny)</h3>" in text
    images = _images(text)
    dynamic = [r for r in runs if r.topology_file.exists()]
    # GMP per layer and global, GraNet, RigL and RigL 3x
    assert sorted(r.path.parent.name.split("-")[0] for r in dynamic) == ["gmp", "gmp", "granet", "rigl", "rigl"]
    # per run: curves, density, layers, and topology and itop for the runs with topology updates; the two
    # recipes' accuracy vs sparsity; the lottery curve; the study's embedded plots
    assert len(images) == 8 * 3 + len(dynamic) * 2 + 2 + 1 + 2
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert f"{rigl.name}: topology.png" in text and f"{rigl.name}: itop.png" in text
    for run in runs:  # the report drew the missing plots for itself: nothing was written into the runs
        assert not list(run.path.glob("*.png"))
    hrefs = [unquote(h) for h in re.findall(r'<a href="([^"#][^"]*)"', text)]
    assert hrefs and all((page.parent / h).exists() for h in hrefs)
    assert "../runs/tiny/" + rigl.name + "/topology.jsonl" in hrefs


def test_markdown_subset():
    text = ("# Title\n\nA `code` and **bold** line\ncontinued.\n\n- one\n  - nested\n- two\n\n"
            "| a | b |\n|---|---:|\n| x<y | 1.5 |\n")
    rendered = markdown_html(text)
    assert "<h3>Title</h3>" in rendered
    assert "<p>A <code>code</code> and <strong>bold</strong> line continued.</p>" in rendered
    assert rendered.count("<ul>") == 2 and "<li>nested</li>" in rendered
    assert '<td class="txt">x&lt;y</td><td class="num">1.5</td>' in rendered
    assert "[image not found: missing.png]" in markdown_html("![plot](missing.png)", Path("/nonexistent"))


def test_report_html_of_one_study_or_lottery_directory(study, capsys):
    root, _, _ = study
    for source, heading in ((root / "runs" / "results", "<h2>Study: "),
                            (root / "runs" / "tiny" / "imp", "<h2>Lottery run: synthetic-mlp-")):
        page = root / "report" / f"{source.name}.html"
        assert main(["report", "--runs-dir", str(source), "--html", str(page)]) == 0
        assert capsys.readouterr().out.strip() == str(page)
        text = page.read_text()
        assert text.count("<h2>") == 1 and heading in text and "<h2>Recipe" not in text
    assert main(["report", "--runs-dir", str(root), "--html", str(root)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_empty_and_missing_sources(tmp_path):
    assert "Nothing found" in render_html_report(tmp_path, page_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        render_html_report(tmp_path / "nope", page_dir=tmp_path)


_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const result = {images: images.length, broken: broken, tables: document.querySelectorAll("table").length,
                  rows: document.querySelectorAll("tbody tr").length};
  document.body.setAttribute("data-check", JSON.stringify(result));
});
</script>"""


def _chromium(*args, profile):
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def _browser_check(page, tmp_path):
    """Load a copy of ``page`` with a load-time probe in Chromium; the probe's findings from the DOM it dumps."""
    probe = tmp_path / page.name
    probe.write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri(), profile=tmp_path / "profile").stdout
    match = re.search(r'data-check="([^"]*)"', dom)
    assert match, "the probe did not run: " + dom[:300]
    return json.loads(match.group(1).replace("&quot;", '"'))


@needs_chromium
def test_every_image_loads_in_chromium(study, tmp_path):
    root, page, _ = study
    expected = len(_images(page.read_text()))
    result = _browser_check(page, tmp_path)
    assert result["images"] == expected and result["broken"] == []
    # per run: per-layer and per-epoch tables; the two recipes' runs; the lottery levels; every table of the
    # study's reproduction.md (verdicts, accuracy, best per family, cost, plasticity)
    study_tables = sum(line.startswith("|---") for line in
                       (root / "runs" / "results" / "reproduction.md").read_text().splitlines())
    assert study_tables >= 5
    assert result["tables"] == 8 * 2 + 2 + 1 + study_tables and result["rows"] > 20

    shot = tmp_path / "page.png"
    _chromium("--window-size=1280,2400", f"--screenshot={shot}", page.as_uri(), profile=tmp_path / "profile")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280) and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100


@needs_chromium
def test_browser_check_catches_a_broken_image(tmp_path):
    """The probe is not vacuous: an image that cannot be decoded is reported."""
    good = write_html_report(tmp_path, tmp_path / "empty.html").read_text()
    broken = good.replace("</body>", '<img src="data:image/png;base64,iVBORw0KGgoAAAAA" alt="broken"></body>')
    (tmp_path / "broken.html").write_text(broken)
    result = _browser_check(tmp_path / "broken.html", tmp_path)
    assert result["images"] == 1 and result["broken"] == ["broken"]
