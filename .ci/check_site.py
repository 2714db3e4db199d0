"""Check the built course site (called by `make site` after the build; stdlib only).

- it opens from file:// with no network: no script, style sheet, font, image or frame is loaded from
  http(s):// (tags and CSS url(...)), and every local one exists;
- every lesson has its page with as many images as its recorded outputs have plots, and previous/next
  links; the index, the reference page and the instructor guide exist.

Usage: python .ci/check_site.py [SITE_DIR]   (default build/site). Exit 1 with the list of problems.
"""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOADING = {"script": "src", "img": "src", "iframe": "src", "source": "src", "video": "src", "audio": "src",
           "embed": "src", "link": "href", "image": "href"}
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)")


class Loads(HTMLParser):
    """What a page loads (tag, url), and the links it has (href of <a>)."""

    def __init__(self):
        super().__init__()
        self.loads, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in LOADING and attrs.get(LOADING[tag]):
            if tag == "link" and not set((attrs.get("rel") or "").split()) & {"stylesheet", "icon", "preload",
                                                                                "modulepreload", "manifest"}:
                return  # rel=index/search/next/prev: navigation, not a load
            self.loads.append((tag, attrs[LOADING[tag]]))
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def external(url: str) -> bool:
    return url.startswith(("http://", "https://", "//"))


def local_target(page: Path, url: str) -> Path | None:
    path = url.split("#")[0].split("?")[0]
    if not path or path.startswith(("data:", "mailto:", "javascript:")) or external(url):
        return None
    return (page.parent / path).resolve()


def problems_in(site: Path, lessons: list[Path]) -> list[str]:
    problems = []
    pages = sorted(site.rglob("*.html"))
    if not pages:
        return [f"no HTML pages in {site}"]
    for page in pages:
        parser = Loads()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        rel = page.relative_to(site)
        for tag, url in parser.loads:
            if external(url):
                problems.append(f"{rel}: <{tag}> loads {url} from the network")
            elif (target := local_target(page, url)) is not None and not target.exists():
                problems.append(f"{rel}: <{tag}> loads {url}, which is not in the site")
        for url in parser.links:
            if (target := local_target(page, url)) is not None and not target.exists():
                problems.append(f"{rel}: link to {url}, which is not in the site")
    for css in site.rglob("*.css"):
        for url in CSS_URL.findall(css.read_text(encoding="utf-8", errors="replace")):
            if external(url):
                problems.append(f"{css.relative_to(site)}: url({url}) from the network")
    for name in ("index.html", "REFERENCE.html", "INSTRUCTORS.html"):
        if not (site / name).exists():
            problems.append(f"missing {name}")
    for i, nb_path in enumerate(lessons):
        page = site / (nb_path.stem + ".html")
        if not page.exists():
            problems.append(f"no page for {nb_path.name}")
            continue
        text = page.read_text(encoding="utf-8")
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        plots = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
        images = len(re.findall(r"<img [^>]*src=\"_images/", text))
        if images < plots:
            problems.append(f"{page.name}: {images} images for {plots} recorded plots")
        if i > 0 and lessons[i - 1].stem + ".html" not in text:
            problems.append(f"{page.name}: no link to the previous lesson")
        if i + 1 < len(lessons) and lessons[i + 1].stem + ".html" not in text:
            problems.append(f"{page.name}: no link to the next lesson")
    return problems


def main() -> int:
    site = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "site"
    lessons = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    problems = problems_in(site, lessons)
    for problem in problems:
        print(f"site: {problem}")
    pages = len(list(site.rglob("*.html")))
    print(f"site check: {pages} pages, {len(lessons)} lessons; "
          + ("nothing loaded from the network, every local file present" if not problems
             else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
