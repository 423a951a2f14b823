"""Small helpers the core and the apps share: crash-safe writes (``atomic``), pieces of HTML reports (``htmlpage``)
and optional imports that name their extra (``optional``).

atomic_write(path, lambda tmp: tmp.write_text(text))          # the old file or the complete new one
page = f"<style>{STYLE}</style><p>{escape(name)}: {num(x)}</p>{png_img(fig)}"
"""

from qwenscope.util.atomic import atomic_folder, atomic_write, replace_folder
from qwenscope.util.htmlpage import STYLE, escape, figure, num, png_img, write_page
from qwenscope.util.optional import require

__all__ = [
    "STYLE",
    "atomic_folder",
    "atomic_write",
    "escape",
    "figure",
    "num",
    "png_img",
    "replace_folder",
    "require",
    "write_page",
]
