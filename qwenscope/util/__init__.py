"""Small helpers the core and the apps share: crash-safe writes (``atomic``) and pieces of HTML reports (``htmlpage``).

atomic_write(path, lambda tmp: tmp.write_text(text))          # the old file or the complete new one
page = f"<style>{STYLE}</style><p>{escape(name)}: {num(x)}</p>{png_img(fig)}"
"""

from qwenscope.util.atomic import atomic_folder, atomic_write, replace_folder
from qwenscope.util.htmlpage import STYLE, escape, figure, num, png_img

__all__ = ["STYLE", "atomic_folder", "atomic_write", "escape", "figure", "num", "png_img", "replace_folder"]
