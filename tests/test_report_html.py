"""`smoothadv analyze` writes index.html: one self-contained page (figures as data: URIs,
every table, how it was made), every string from the files escaped."""

from __future__ import annotations

import base64
import re
from html import escape

import pandas as pd
from smoothadv.analysis import report_html
from smoothadv.analysis.tables import Table
from smoothadv.cli.main import main
from smoothadv.common import layout
from test_analysis import ATTACK, TRIALS, WRONG, A, B, C, write_trial

HOSTILE = '<script>alert("owned")</script>'  # certified: in the tables
HOSTILE_LEFT_OUT = "<img src=x onerror=alert(1)>&amp;"  # no certification: left out
TABLE_TITLES = ("Certified accuracy (%) of the best trial at each ℓ2 radius (Tables 1–2)",
                "Trial behind each envelope point", "Upper envelope per σ (%), selection: max",
                "Every trial (Tables 7–15), certified accuracy (%)",
                "ℓ∞ certified accuracy (%) implied by the ℓ2 certificates (Table 3)",
                "Empirical accuracy under attack (%), best trial per attack ε",
                "Trials left out: missing or incomplete certification")


def _renamed(folder, name: str, params: dict) -> None:
    """Give the trial in ``folder`` the name ``name`` (one a folder could not have)."""
    layout.write_json(folder / "trial.json", {"name": name, "params": params})


def _sweep(tmp_path):
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "sweep.yaml").write_text("name: sweep\ngrid: {sigma: [0.25, 0.5]}\n")
    for name, (params, radii) in TRIALS.items():
        write_trial(root, name, params, radii, attack=ATTACK if name == A else None)
    params = {"attack": "pgd", "epsilon": 0.25, "sigma": 0.5}
    _renamed(write_trial(root, "hostile", params, [0.2, WRONG, 0.1, 0.4]), HOSTILE, params)
    _renamed(write_trial(root, "left-out", {"sigma": 1.0}, None), HOSTILE_LEFT_OUT,
             {"sigma": 1.0})
    return root


def test_analyze_writes_one_self_contained_page_with_every_table(tmp_path):
    root, out = _sweep(tmp_path), tmp_path / "report"
    assert main(["analyze", str(root), "-o", str(out), "--reference", "cohen"]) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not list(out.glob(".*.tmp"))

    # the four figures, embedded: the very PNG files written beside the page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4
    assert base64.b64decode(images[0]) == (out / "envelope.png").read_bytes()
    for stem in ("envelope", "envelope_per_sigma", "representative_per_sigma",
                 "certified_accuracy_all"):
        assert f'id="fig-{stem}"' in page

    # every table, with its title and column headers, the best per column in bold
    for title in TABLE_TITLES:
        assert f"<h2>{escape(title)}" in page, title
    assert "<th>σ</th>" in page and "<th>ACR</th>" in page and "<th>why</th>" in page
    assert ('<td>upper envelope (max over trials)</td><td class="num">75.0</td>'
            '<td class="num">75.0</td><td class="num">50.0</td>') in page
    assert '<td>Cohen et al. (published)</td><td class="num">–</td>' in page
    assert '<td class="num"><b>75.0</b></td>' in page
    assert all(f"<td>{name}</td>" in page for name in (A, B, C))

    # how it was made
    made = page[page.index('id="made"'):page.index("<nav>")]
    assert escape(str(root)) in made and "max: at each radius the best trial" in made
    assert "0.001: failure probability" in made and "cifar10" in made
    assert "smoothadv 0.1.0" in made and "UTC" in made and "cohen" in made
    assert "4 certified, 1 left out (5 in all)" in made
    assert "<code>tables.md</code>" in made and "<code>envelope.png</code>" in made

    # hostile names are text, never markup; nothing is fetched from elsewhere
    assert f"<td>{escape(HOSTILE)}</td>" in page
    assert f"<td>{escape(HOSTILE_LEFT_OUT)}</td><td>missing: no certify.tsv</td>" in page
    assert "<script" not in page and "<img src=x" not in page and "&amp;amp;" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "@import" not in page and "url(" not in page
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', page))
    assert all(href.startswith("#") for href in re.findall(r'href="([^"]*)"', page))


def test_tables_and_texts_are_escaped_and_empty_tables_say_none():
    frame = pd.DataFrame({"trial": ["<b>x</b>", "a&b"], "sigma": [0.25, 0.5],
                          "acc": [0.5, 0.75]})
    table = Table("per <trial>", frame, percent=["acc"], bold=["acc"], note="n < m & \"q\"")
    html = report_html.html_table(table)
    assert "<th>σ</th>" in html and "<td>&lt;b&gt;x&lt;/b&gt;</td>" in html
    assert "<td>a&amp;b</td>" in html and '<td class="num"><b>75.0</b></td>' in html
    assert '<td class="num">50.0</td>' in html and '<td class="num">0.25</td>' in html

    empty = Table("left out", pd.DataFrame({"trial": [], "why": []}))
    png = b"\x89PNG fake"
    page = report_html.page("<title>", [("Read", "<code>x</code>")], ["a <line>", ""],
                            [("envelope", 'alt "<quoted>"', png)], [table, empty])
    assert "<title>&lt;title&gt;</title>" in page and "<li>a &lt;line&gt;</li>" in page
    assert "<h2>per &lt;trial&gt;</h2>" in page
    assert '<p class="note">n &lt; m &amp; &quot;q&quot;</p>' in page
    assert 'alt="alt &quot;&lt;quoted&gt;&quot;"' in page
    assert base64.b64encode(png).decode() in page
    assert '<p class="none">(none)</p>' in page
    assert '<a href="#table-2">left out</a>' in page
