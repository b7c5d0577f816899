# Limits of the core, each with its unit in the name. Included by the .pyx modules and mirrored
# in core_ext/limits.py for the server's input validation.

DEF LINES_PER_RECEIPT_MAX = 1000            # lines
DEF CAMPAIGNS_PER_PROGRAM_MAX = 4096        # campaigns
DEF BPS_PER_UNIT = 10000                    # basis points in 100 %
