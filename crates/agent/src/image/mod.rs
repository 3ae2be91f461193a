//! Images on this node (being written).
