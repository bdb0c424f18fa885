"""Joint sets shared by every hand model, renderer output and evaluation tool.

The 21-joint order is the project's contract (manifest `joint_names`, shard labels, fitting).
NYU-14 is the evaluation subset of the NYU hand pose dataset (Tompson et al. 2014): for pinky,
ring, middle and index the tip and the PIP knuckle, for the thumb the tip, IP and MCP, then the
ulnar (pinky side) and radial (thumb side) wrist points and the palm centre (NYU's 36-point indices 0, 3, 6, 9, 12, 15, 18, 21, 24, 25, 27,
30, 31, 32).
"""

from __future__ import annotations

FINGERS: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky")

JOINT_NAMES: tuple[str, ...] = (
    "wrist",
    "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
)
JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(JOINT_NAMES)}

# Parent of each of the 21 joints (the wrist is the root).
JOINT_PARENTS: tuple[int, ...] = (
    -1,
    0, 1, 2, 3,
    0, 5, 6, 7,
    0, 9, 10, 11,
    0, 13, 14, 15,
    0, 17, 18, 19,
)

# MANO's 16 articulated joints in smplx order: wrist, then index, middle, pinky, ring, thumb
# (three each, proximal to distal). MANO_TO_21[k] is the 21-joint index of MANO joint k.
MANO_JOINT_NAMES: tuple[str, ...] = (
    "wrist",
    "index_mcp", "index_pip", "index_dip",
    "middle_mcp", "middle_pip", "middle_dip",
    "pinky_mcp", "pinky_pip", "pinky_dip",
    "ring_mcp", "ring_pip", "ring_dip",
    "thumb_cmc", "thumb_mcp", "thumb_ip",
)
MANO_TO_21: tuple[int, ...] = tuple(JOINT_INDEX[n] for n in MANO_JOINT_NAMES)
TIP_NAMES: tuple[str, ...] = tuple(f"{f}_tip" for f in FINGERS)

NYU14_NAMES: tuple[str, ...] = (
    "pinky_tip", "pinky_pip",
    "ring_tip", "ring_pip",
    "middle_tip", "middle_pip",
    "index_tip", "index_pip",
    "thumb_tip", "thumb_ip", "thumb_mcp",
    "wrist_ulnar", "wrist_radial",
    "palm_center",
)
# NYU's palm centre lies this fraction of the way from the wrist to the middle MCP (measured by
# fitting the NYU test labels, docs/hand_models.md): how the hand model places it, and where a
# 21-joint label set has its crop centre.
PALM_CENTRE_FRACTION = 0.66
