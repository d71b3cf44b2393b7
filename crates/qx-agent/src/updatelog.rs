//! updatelog (being written)
