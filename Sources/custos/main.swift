import Admin

await CustosCommand.runMain()
