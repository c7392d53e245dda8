"""carry_env: a gymnasium environment for the spot-perpetual funding-rate carry trade."""
