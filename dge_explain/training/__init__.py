"""Distilling DGE routers from a dense teacher."""
