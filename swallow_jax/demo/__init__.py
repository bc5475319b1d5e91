"""The demo's generated bilingual world: corpus, chat data and evaluation tasks, built from code.

    paths = build_demo_data("runs/demo/data", seed=0, scale=1.0)
    paths.raw["ja_web"], paths.tasks["ja_qa"]
"""

from swallow_jax.demo.build import CHAT_SOURCES, TEXT_SOURCES, DemoPaths, build_demo_data
from swallow_jax.demo.world import World, make_world

__all__ = ["CHAT_SOURCES", "TEXT_SOURCES", "DemoPaths", "World", "build_demo_data", "make_world"]
