"""Seeing the scene: a browser viewer of the trained splats (viser) and photoreal highlight renders.

- :mod:`.server`: ``ccl-lgs view`` and the node's ``viewer.serve``: the Gaussians as splats in the
  world frame, the capture's camera path, a text box whose queries go through the scene's own
  :class:`~ccl_lgs_ros.query.engine.QueryEngine` and light up the instances found.
- :mod:`.highlight`: the rendered RGB of a capture camera with a query's instances tinted and
  outlined, and the 2D relevance laid over the rendered image.

Never imports rclpy (the node hands scenes and answers to the viewer).
"""
