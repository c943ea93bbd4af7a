"""Data: the bundled sets (digits), image folders streamed by a DataLoader, npz arrays, and the data specs that
name them."""
